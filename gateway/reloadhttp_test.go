package gateway

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// POST /reload reloads for a client on loopback that sends the header,
// and for no one else.
func TestReloadOverHTTP(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(file, []byte("[device]\nid = \"EGW-H\"\nstate_dir = \""+dir+"\"\n[[broker.listener]]\naddress = \"127.0.0.1:0\"\n"), 0o600)
	cfg, err := LoadConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	m := &metrics{g: startGateway(t, cfg)}
	for _, tc := range []struct {
		name, method, remote string
		header               bool
		want                 int
	}{
		{"GET", http.MethodGet, "127.0.0.1:4000", true, http.StatusMethodNotAllowed},
		{"from the network", http.MethodPost, "192.0.2.7:4000", true, http.StatusForbidden},
		{"without the header", http.MethodPost, "127.0.0.1:4000", false, http.StatusForbidden},
		{"IPv6 loopback", http.MethodPost, "[::1]:4000", true, http.StatusOK},
		{"loopback", http.MethodPost, "127.0.0.1:4000", true, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, "/reload", nil)
			r.RemoteAddr = tc.remote
			if tc.header {
				r.Header.Set(ReloadHeader, "1")
			}
			w := httptest.NewRecorder()
			m.serveReload(w, r)
			if w.Code != tc.want {
				t.Fatalf("got %d %s, want %d", w.Code, w.Body.String(), tc.want)
			}
			if tc.want != http.StatusOK {
				return
			}
			var a ReloadAnswer
			if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil || a.Config != file || len(a.Applied) == 0 || a.Error != "" {
				t.Errorf("answer %s: %+v, %v", w.Body.String(), a, err)
			}
		})
	}
	os.WriteFile(file, []byte("[device]\nid = 7\n"), 0o600)
	r := httptest.NewRequest(http.MethodPost, "/reload", nil)
	r.RemoteAddr = "127.0.0.1:4000"
	r.Header.Set(ReloadHeader, "1")
	w := httptest.NewRecorder()
	m.serveReload(w, r)
	var a ReloadAnswer
	if json.Unmarshal(w.Body.Bytes(), &a); w.Code != http.StatusUnprocessableEntity || a.Error == "" {
		t.Errorf("a configuration that does not load: got %d %s, want 422 with the reason", w.Code, w.Body.String())
	}
}
