package gateway

import (
	"context"
	"maps"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

// stamp is what tells a file changed: it is looked at, not read.
type stamp struct {
	exists bool
	size   int64
	mtime  int64
	inode  uint64 // a file renamed over the old one (editors, atomic writes)
}

// watchedFiles lists the files a reload reads: the configuration, the
// broker's password, ACL, certificate, key, CA and CRL files, and the
// device identity.
func watchedFiles(cfg *Config) []string {
	fs := []string{cfg.Path, cfg.Broker.PasswordFile, cfg.Broker.ACLFile}
	for _, l := range cfg.Broker.Listeners {
		fs = append(fs, l.TLSCert, l.TLSKey, l.ClientCA, l.CRLFile)
	}
	fs = append(fs, cfg.Identity.Cert, cfg.Identity.CA)
	if path, ok := strings.CutPrefix(cfg.Identity.Key, "file:"); ok {
		fs = append(fs, path)
	}
	fs = slices.DeleteFunc(fs, func(f string) bool { return f == "" })
	slices.Sort(fs)
	return slices.Compact(fs)
}

func stamps(files []string) map[string]stamp {
	m := make(map[string]stamp, len(files))
	for _, f := range files {
		var s stamp
		if fi, err := os.Stat(f); err == nil {
			s = stamp{exists: true, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				s.inode = st.Ino
			}
		}
		m[f] = s
	}
	return m
}

// watchFiles reloads when a watched file changes (broker.watch_files):
// the change must hold for one more look, so a file caught half written
// is not taken. A reload that is refused (a broken file) is logged as
// SIGHUP's is, and not tried again until the files change again.
func (g *Gateway) watchFiles(ctx context.Context, every time.Duration, applied map[string]stamp) {
	g.reloadMu.Lock()
	files := watchedFiles(g.cfg)
	g.reloadMu.Unlock()
	var pending map[string]stamp // a change seen once, not yet applied
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := stamps(files)
		switch {
		case maps.Equal(now, applied):
			pending = nil
			continue
		case !maps.Equal(now, pending):
			pending = now // settling
			continue
		}
		var changed []string
		for f, s := range now {
			if applied[f] != s {
				changed = append(changed, f)
			}
		}
		slices.Sort(changed)
		g.log.Info("watched files changed: reloading", "files", changed)
		g.Reload()
		g.reloadMu.Lock()
		files = watchedFiles(g.cfg) // the new configuration may name others
		g.reloadMu.Unlock()
		// What the reload saw is what settled; a file changed while it
		// ran is a change still to take.
		applied, pending = map[string]stamp{}, nil
		for _, f := range files {
			if s, ok := now[f]; ok {
				applied[f] = s
			} else {
				applied[f] = stamps([]string{f})[f]
			}
		}
	}
}
