package sensors

import (
	"fmt"
	"strings"
)

// DefaultTopic is where a reading goes unless its sensor says otherwise:
// sensors/<name>/<quantity>.
const DefaultTopic = "sensors/%n/%q"

// StatusQuantity is the quantity level of a sensor's status topic: with
// the default topic, sensors/<name>/status.
const StatusQuantity = "status"

// ExpandTopic fills in a topic template: %n is the sensor's name, %q the
// quantity, %d the device id and %% a percent sign.
func ExpandTopic(tmpl, device, name, quantity string) string {
	var b strings.Builder
	for i := 0; i < len(tmpl); i++ {
		if tmpl[i] != '%' || i+1 == len(tmpl) {
			b.WriteByte(tmpl[i])
			continue
		}
		i++
		switch tmpl[i] {
		case 'n':
			b.WriteString(name)
		case 'q':
			b.WriteString(quantity)
		case 'd':
			b.WriteString(device)
		default:
			b.WriteByte(tmpl[i])
		}
	}
	return b.String()
}

// CheckTopic reports what is wrong with a topic template: it must hold
// %q, so that each quantity (and the status) has a topic of its own, know
// no other escape than %n, %d and %%, and have no wildcard.
func CheckTopic(tmpl string) error {
	hasQ := false
	for i := 0; i < len(tmpl); i++ {
		if tmpl[i] != '%' {
			continue
		}
		if i+1 == len(tmpl) {
			return fmt.Errorf("sensors: %q: a lone %% at the end (want %%n, %%q, %%d or %%%%)", tmpl)
		}
		i++
		switch tmpl[i] {
		case 'q':
			hasQ = true
		case 'n', 'd', '%':
		default:
			return fmt.Errorf("sensors: %q: unknown %%%c (want %%n, %%q, %%d or %%%%)", tmpl, tmpl[i])
		}
	}
	switch {
	case !hasQ:
		return fmt.Errorf("sensors: %q: no %%q: each quantity needs a topic of its own", tmpl)
	case strings.ContainsAny(tmpl, "+#"):
		return fmt.Errorf("sensors: %q: no wildcards in a topic", tmpl)
	case strings.HasPrefix(tmpl, "$"):
		return fmt.Errorf("sensors: %q: topics starting with $ are the broker's", tmpl)
	}
	return nil
}
