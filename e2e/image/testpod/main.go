// Command testpod is PID 1 of the real nodes' test containers, built into
// a one-file image:
//
//	testpod pause   the sandbox ("pause") container: reaps children and
//	                exits on SIGTERM
//	testpod tikv    plays TiKV on its volume: writes -files files under
//	                -data once (a restarted pod keeps what it wrote), then
//	                waits for SIGTERM and exits 0 at once
//	testpod ls DIR  lists DIR with a count of files below each entry, for
//	                kubectl exec (the image has no shell)
//
// Trapping SIGTERM matters: a PID 1 that ignores it makes every pod
// deletion wait the whole grace period.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// filesPerDir spreads the files like TiKV's RocksDB directories do, and
// keeps directory sizes reasonable.
const filesPerDir = 1000

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testpod pause|tikv [flags]")
		os.Exit(2)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	switch os.Args[1] {
	case "pause":
		pause(sigs)
	case "tikv":
		fl := flag.NewFlagSet("tikv", flag.ExitOnError)
		data := fl.String("data", "/var/lib/tikv", "the volume")
		files := fl.Int("files", 100, "files to write on first start")
		size := fl.Int("size", 10, "bytes per file (0: empty files, which take no tmpfs pages)")
		_ = fl.Parse(os.Args[2:])
		if err := tikv(*data, *files, *size); err != nil {
			fmt.Fprintln(os.Stderr, "testpod:", err)
			os.Exit(1)
		}
		<-sigs
		fmt.Println("SIGTERM: exiting")
	case "ls":
		dir := "/var/lib/tikv"
		if len(os.Args) > 2 {
			dir = os.Args[2]
		}
		if err := ls(dir); err != nil {
			fmt.Fprintln(os.Stderr, "testpod:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "testpod: unknown mode", os.Args[1])
		os.Exit(2)
	}
}

// pause reaps orphans (it is PID 1 of the pod's namespaces) until told to
// stop.
func pause(sigs <-chan os.Signal) {
	children := make(chan os.Signal, 1)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-sigs:
			return
		case <-children:
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}

// tikv writes files once: a LOCK file at the root marks a volume that
// already holds this store's data, as TiKV's own LOCK does.
func tikv(data string, files, size int) error {
	lock := filepath.Join(data, "LOCK")
	if _, err := os.Stat(lock); err == nil {
		fmt.Printf("found my data in %s: keeping it\n", data)
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	content := []byte(strings.Repeat("tikv data\n", size/10+1)[:size])
	start := time.Now()
	for i := range files {
		dir := filepath.Join(data, fmt.Sprintf("db-%04d", i/filesPerDir))
		if i%filesPerDir == 0 {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%06d.sst", i)), content, 0o644); err != nil {
			return err
		}
	}
	host, _ := os.Hostname()
	if err := os.WriteFile(lock, []byte(host+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %d files into %s in %s\n", files, data, time.Since(start).Round(time.Millisecond))
	return nil
}

// ls prints each entry of dir with the number of files below it.
func ls(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		files := 0
		_ = filepath.WalkDir(filepath.Join(dir, e.Name()), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				files++
			}
			return nil
		})
		fmt.Printf("%-24s %d files\n", e.Name(), files)
	}
	return nil
}
