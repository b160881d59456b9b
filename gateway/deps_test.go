package gateway

import (
	"os/exec"
	"strings"
	"testing"
)

// TestLayering: sensors, localbroker, bridge and provisioning do not import
// each other; only gateway wires them together.
func TestLayering(t *testing.T) {
	parts := []string{"sensors", "localbroker", "bridge", "provisioning"}
	const mod = "github.com/fieldgate/fieldgate/"
	for _, p := range parts {
		out, err := exec.Command("go", "list", "-deps", mod+p+"/...").CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", p, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, q := range parts {
				if q != p && (dep == mod+q || strings.HasPrefix(dep, mod+q+"/")) {
					t.Errorf("%s imports %s", p, dep)
				}
			}
			if dep == mod+"gateway" {
				t.Errorf("%s imports gateway", p)
			}
		}
	}
}
