package gateway

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/time/rate"
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

// A burst of reloads is cut to a few and then one a second (each one
// reads the files and writes the journal).
func TestReloadRateLimited(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "fieldgate.toml")
	os.WriteFile(file, []byte("[device]\nid = \"EGW-H\"\nstate_dir = \""+dir+"\"\n[[broker.listener]]\naddress = \"127.0.0.1:0\"\n"), 0o600)
	cfg, err := LoadConfig(file)
	if err != nil {
		t.Fatal(err)
	}
	m := &metrics{g: startGateway(t, cfg), reloads: rate.NewLimiter(1, 5)}
	codes := map[int]int{}
	for range 10 {
		r := httptest.NewRequest(http.MethodPost, "/reload", nil)
		r.RemoteAddr = "127.0.0.1:4000"
		r.Header.Set(ReloadHeader, "1")
		w := httptest.NewRecorder()
		m.serveReload(w, r)
		codes[w.Code]++
	}
	if codes[http.StatusOK] < 5 || codes[http.StatusOK] > 6 || codes[http.StatusTooManyRequests] < 4 {
		t.Errorf("10 reloads at once: %v, want 5 (or 6) answered and the rest 429", codes)
	}
}

// Requests naming another host than an address, localhost or the device
// itself are refused: a page of a domain rebound to 127.0.0.1 cannot read
// /status or ask for /reload.
func TestHostCheck(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	h := hostCheck(ok, "egw-01")
	for host, want := range map[string]int{
		"127.0.0.1:9411": 200, "[::1]:9411": 200, "localhost:9411": 200, "192.0.2.7:9411": 200,
		"egw-01:9411": 200, "EGW-01.local": 200,
		"evil.example:9411": http.StatusMisdirectedRequest, "egw-01.evil.example": http.StatusMisdirectedRequest,
	} {
		r := httptest.NewRequest(http.MethodGet, "/status", nil)
		r.Host = host
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("Host %s: %d, want %d", host, w.Code, want)
		}
	}
}
