// Package image builds container images without a Docker engine: the
// tidb-localpv image (a Debian base made once with debootstrap from
// Debian's packages, plus our static binary as a layer) and the tiny test
// image the real-node scenarios run. Both are written as docker-archive
// tarballs, which `ctr images import` and `docker load` read.
package image

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The base of the tidb-localpv image, as in manifests/Dockerfile: Debian
// bookworm with what the agent executes (mkfs.ext4 and mkfs.xfs to format,
// blkid and wipefs to read and erase signatures, blkdiscard for Block
// wipes, mount and umount for mount-utils).
const (
	DefaultSuite  = "bookworm"
	DefaultMirror = "http://deb.debian.org/debian"
)

// DefaultPackages are installed on top of debootstrap's minbase variant.
var DefaultPackages = []string{"e2fsprogs", "xfsprogs", "util-linux", "mount"}

// BaseOptions describe the Debian base layer.
type BaseOptions struct {
	// CacheDir holds the base, keyed by suite and package set; it is made
	// once per machine (about 3 minutes, most of it downloading).
	CacheDir string
	Suite    string   // default DefaultSuite
	Mirror   string   // default DefaultMirror
	Packages []string // default DefaultPackages
	Progress io.Writer
}

func (o BaseOptions) withDefaults() BaseOptions {
	if o.Suite == "" {
		o.Suite = DefaultSuite
	}
	if o.Mirror == "" {
		o.Mirror = DefaultMirror
	}
	if o.Packages == nil {
		o.Packages = DefaultPackages
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o
}

// basePath is where the base of these options is cached.
func (o BaseOptions) basePath() string {
	pkgs := slices.Sorted(slices.Values(o.Packages))
	sum := sha256.Sum256([]byte(o.Suite + "\n" + strings.Join(pkgs, ",")))
	return filepath.Join(o.CacheDir, "image", fmt.Sprintf("debian-%s-%s", o.Suite, hex.EncodeToString(sum[:4])), "rootfs.tar.gz")
}

// EnsureBase returns the path of the base layer (a gzipped tar of the root
// filesystem, compressed once here rather than on every image build),
// running debootstrap if it is not cached yet. It needs root (debootstrap
// chroots to configure the packages).
func EnsureBase(ctx context.Context, opts BaseOptions) (string, error) {
	if opts.CacheDir == "" {
		return "", errors.New("image base: CacheDir is required")
	}
	o := opts.withDefaults()
	out := o.basePath()
	if _, err := os.Stat(out); err == nil {
		fmt.Fprintf(o.Progress, "using cached Debian %s base (%s)\n", o.Suite, out)
		return out, nil
	}
	if os.Geteuid() != 0 {
		return "", errors.New("image base: debootstrap needs root")
	}
	debootstrap, err := exec.LookPath("debootstrap")
	if err != nil {
		return "", fmt.Errorf("image base: debootstrap is not installed (apt-get install debootstrap): %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(filepath.Dir(out), ".build-*")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	rootfs := filepath.Join(work, "rootfs")

	start := time.Now()
	fmt.Fprintf(o.Progress, "making the Debian %s base with debootstrap (%s) into %s\n", o.Suite, strings.Join(o.Packages, ", "), filepath.Dir(out))
	cmd := exec.CommandContext(ctx, debootstrap, "--variant=minbase", "--include="+strings.Join(o.Packages, ","), o.Suite, rootfs, o.Mirror)
	logPath := filepath.Join(work, "debootstrap.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return "", err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := runWithProgress(ctx, cmd, o.Progress, "debootstrap", logPath); err != nil {
		logFile.Close()
		data, _ := os.ReadFile(logPath)
		return "", fmt.Errorf("debootstrap: %w\n%s", err, lastLines(string(data), 20))
	}
	logFile.Close()
	if err := slim(rootfs); err != nil {
		return "", fmt.Errorf("slim the base: %w", err)
	}
	tmpTar := filepath.Join(work, "rootfs.tar.gz")
	if err := tarDir(rootfs, tmpTar); err != nil {
		return "", fmt.Errorf("tar the base: %w", err)
	}
	if err := os.Rename(tmpTar, out); err != nil {
		return "", err
	}
	fi, _ := os.Stat(out)
	fmt.Fprintf(o.Progress, "Debian %s base ready in %s (%d MiB)\n", o.Suite, time.Since(start).Round(time.Second), fi.Size()>>20)
	return out, nil
}

// runWithProgress runs cmd, printing every 15 s the last line of its log.
func runWithProgress(ctx context.Context, cmd *exec.Cmd, progress io.Writer, what, logPath string) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	start := time.Now()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			data, _ := os.ReadFile(logPath)
			fmt.Fprintf(progress, "  %s: %s elapsed, %s\n", what, time.Since(start).Round(time.Second), strings.TrimSpace(lastLines(string(data), 1)))
		case <-ctx.Done():
			<-done
			return ctx.Err()
		}
	}
}

// slim removes what debian:bookworm-slim leaves out too: the apt lists and
// package cache, documentation, man pages and locales (all but C).
func slim(rootfs string) error {
	for _, dir := range []string{"var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info", "var/log"} {
		p := filepath.Join(rootfs, dir)
		entries, err := os.ReadDir(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(p, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// tarDir writes the tree at dir into a gzipped tar file with paths
// relative to it, keeping modes, owners, links and device nodes.
func tarDir(dir, out string) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		// Names would come from the build host's passwd; ids are what count.
		hdr.Uname, hdr.Gname = "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = zw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
