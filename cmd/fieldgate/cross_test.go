package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/fieldgate/fieldgate/bridge/mosquittotest"
)

// The static builds for the Pi run, under qemu-user, far enough to print
// their version and check the configuration an image ships with.
func TestCrossBuildsRunUnderQEMU(t *testing.T) {
	for _, tc := range []struct {
		qemu, goarch, goarm string
	}{
		{"qemu-aarch64-static", "arm64", ""},
		{"qemu-arm-static", "arm", "6"},
	} {
		t.Run(tc.goarch+tc.goarm, func(t *testing.T) {
			qemu := mosquittotest.Binary(t, tc.qemu)
			bin := filepath.Join(t.TempDir(), "fieldgate")
			build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, ".")
			build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+tc.goarch, "GOARM="+tc.goarm)
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("build: %v\n%s", err, out)
			}
			fi, _ := os.Stat(bin)
			t.Logf("linux/%s%s stripped: %.1f MB", tc.goarch, tc.goarm, float64(fi.Size())/1e6)
			out, err := exec.Command(qemu, bin, "version").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "linux/"+tc.goarch) || !strings.Contains(string(out), runtime.Version()) {
				t.Errorf("version under %s: %v %q", tc.qemu, err, out)
			}
			// The image's configuration, with its state under a temp dir.
			example, err := os.ReadFile("../../systemd/fieldgate.toml")
			if err != nil {
				t.Fatal(err)
			}
			cfg := filepath.Join(t.TempDir(), "fieldgate.toml")
			os.WriteFile(cfg, []byte(strings.ReplaceAll(string(example), "/var/lib/fieldgate", t.TempDir())), 0o600)
			if out, err := exec.Command(qemu, bin, "check-config", "--config", cfg).CombinedOutput(); err != nil || !strings.Contains(string(out), ": ok") {
				t.Errorf("check-config under %s: %v %q", tc.qemu, err, out)
			}
		})
	}
}
