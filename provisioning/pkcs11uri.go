package provisioning

import (
	"fmt"
	"net/url"
	"os"
	"strings"
)

// pkcs11URI is the part of an RFC 7512 PKCS#11 URI Fieldgate uses:
//
//	pkcs11:token=fieldgate;object=device?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/var/lib/fieldgate/pin (a file the service user owns, 0600, like the key files)
type pkcs11URI struct {
	Token, Serial, Object string
	ModulePath, Pin       string
}

func parsePKCS11URI(uri string) (pkcs11URI, error) {
	var u pkcs11URI
	rest, ok := strings.CutPrefix(uri, "pkcs11:")
	if !ok {
		return u, fmt.Errorf("provisioning: key %q: not a pkcs11: URI", RedactURI(uri))
	}
	path, query, _ := strings.Cut(rest, "?")
	attr := func(kv, sep string) (string, string, error) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return "", "", fmt.Errorf("provisioning: key %q: %q: want name=value", uri, kv)
		}
		v, err := url.PathUnescape(v)
		if err != nil {
			return "", "", fmt.Errorf("provisioning: key %q: %q: %w", uri, kv, err)
		}
		return k, v, nil
	}
	for _, kv := range strings.Split(path, ";") {
		if kv == "" {
			continue
		}
		k, v, err := attr(kv, ";")
		if err != nil {
			return u, err
		}
		switch k {
		case "token":
			u.Token = v
		case "serial":
			u.Serial = v
		case "object":
			u.Object = v
		case "type", "manufacturer", "model", "library-description", "library-manufacturer", "library-version", "slot-description", "slot-id", "slot-manufacturer", "id":
			// Accepted and not needed: the token and the object label
			// are what Fieldgate selects by.
		default:
			return u, fmt.Errorf("provisioning: key %q: unknown attribute %q", RedactURI(uri), k)
		}
	}
	var pinSource string
	for _, kv := range strings.Split(query, "&") {
		if kv == "" {
			continue
		}
		k, v, err := attr(kv, "&")
		if err != nil {
			return u, err
		}
		switch k {
		case "module-path":
			u.ModulePath = v
		case "pin-value":
			u.Pin = v
		case "pin-source":
			pinSource = v
		case "module-name":
		default:
			return u, fmt.Errorf("provisioning: key %q: unknown query attribute %q", RedactURI(uri), k)
		}
	}
	if pinSource != "" {
		p := strings.TrimPrefix(pinSource, "file:")
		if err := CheckPrivate(p); err != nil {
			return u, fmt.Errorf("provisioning: key %q: pin-source: %w", RedactURI(uri), err)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return u, fmt.Errorf("provisioning: key %q: pin-source: %w", RedactURI(uri), err)
		}
		u.Pin = strings.TrimRight(string(data), "\r\n")
	}
	switch {
	case u.ModulePath == "":
		return u, fmt.Errorf("provisioning: key %q: missing module-path (the token's PKCS#11 library)", RedactURI(uri))
	case u.Token == "" && u.Serial == "":
		return u, fmt.Errorf("provisioning: key %q: missing token= (or serial=)", RedactURI(uri))
	case u.Object == "":
		return u, fmt.Errorf("provisioning: key %q: missing object= (the key's label)", RedactURI(uri))
	}
	return u, nil
}

// RedactURI keeps a PKCS#11 PIN out of logs and errors: pin-value is
// replaced by "…". Other key URIs are returned as they are.
func RedactURI(uri string) string {
	path, query, ok := strings.Cut(uri, "?")
	if !ok {
		return uri
	}
	parts := strings.Split(query, "&")
	for i, p := range parts {
		if strings.HasPrefix(p, "pin-value=") {
			parts[i] = "pin-value=…"
		}
	}
	return path + "?" + strings.Join(parts, "&")
}
