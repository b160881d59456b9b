package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The Buildroot tree holds together: each defconfig enables the package,
// systemd and a read-only root, and names files that exist. With
// BUILDROOT_DIR set to a Buildroot checkout, check-package runs on the
// tree and every defconfig is resolved by Buildroot itself.
func TestBuildrootTree(t *testing.T) {
	tree, _ := filepath.Abs("../../buildroot")
	defconfigs, _ := filepath.Glob(filepath.Join(tree, "configs", "fieldgate_*_defconfig"))
	if len(defconfigs) != 3 {
		t.Fatalf("defconfigs: %v, want rpi4_64, rpi3_64 and rpizero2w_64", defconfigs)
	}
	for _, d := range defconfigs {
		data, err := os.ReadFile(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"BR2_PACKAGE_FIELDGATE=y", "BR2_INIT_SYSTEMD=y", "# BR2_TARGET_GENERIC_REMOUNT_ROOTFS_RW is not set", "BR2_PACKAGE_I2C_TOOLS=y", "BR2_PACKAGE_TPM2_TOOLS=y"} {
			if !strings.Contains(string(data), want+"\n") {
				t.Errorf("%s: no %q", filepath.Base(d), want)
			}
		}
		for _, l := range strings.Split(string(data), "\n") {
			if _, v, ok := strings.Cut(l, "=\"$(BR2_EXTERNAL_FIELDGATE_PATH)/"); ok {
				if _, err := os.Stat(filepath.Join(tree, strings.TrimSuffix(v, "\""))); err != nil {
					t.Errorf("%s: %v", filepath.Base(d), err)
				}
			}
		}
	}
	for _, f := range []string{"fieldgate.service", "fieldgate.toml", "60-fieldgate.rules", "fieldgate-modules.conf"} {
		if _, err := os.Stat(filepath.Join(tree, "..", "systemd", f)); err != nil {
			t.Errorf("the package installs systemd/%s: %v", f, err)
		}
	}

	br := os.Getenv("BUILDROOT_DIR")
	if br == "" {
		t.Log("BUILDROOT_DIR is not set: check-package and the defconfigs are not run through Buildroot")
		return
	}
	files, _ := filepath.Glob(filepath.Join(tree, "package", "fieldgate", "*"))
	files = append(files, filepath.Join(tree, "Config.in"), filepath.Join(tree, "external.mk"), filepath.Join(tree, "external.desc"))
	files = append(files, defconfigs...)
	out, err := exec.Command("/usr/bin/python3", append([]string{filepath.Join(br, "utils", "check-package"), "-b"}, files...)...).CombinedOutput()
	t.Logf("check-package: %s", strings.TrimSpace(string(out)))
	if err != nil || !strings.Contains(string(out), "\n0 warnings generated") {
		t.Errorf("check-package: %v", err)
	}
	for _, d := range defconfigs {
		o := t.TempDir()
		name := filepath.Base(d)
		if out, err := exec.Command("make", "-s", "-C", br, "BR2_EXTERNAL="+tree, "O="+o, name).CombinedOutput(); err != nil {
			t.Errorf("make %s: %v\n%s", name, err, out)
			continue
		}
		cfg, _ := os.ReadFile(filepath.Join(o, ".config"))
		if !strings.Contains(string(cfg), "BR2_PACKAGE_FIELDGATE=y\n") {
			t.Errorf("%s: Buildroot dropped BR2_PACKAGE_FIELDGATE (a dependency not met?)", name)
		}
	}
}
