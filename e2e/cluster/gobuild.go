package cluster

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// progressInterval is how often a long go command reports that it is alive.
const progressInterval = 15 * time.Second

// builder runs the go tool for EnsureBinaries.
type builder struct {
	opts BuildOptions // with defaults applied
}

// goEnv is the environment for child go commands: inherited, minus ETCD_*
// (etcd reads those as flags, so we keep them away from everything we spawn),
// with -mod=mod so generated modules may update their go.mod/go.sum, and
// without any go.work that could claim the temporary module.
func goEnv() []string {
	env := dropEnv(os.Environ(), func(k string) bool {
		return strings.HasPrefix(k, "ETCD_") || k == "GOFLAGS" || k == "GOWORK"
	})
	return append(env, "GOFLAGS=-mod=mod", "GOWORK=off")
}

// dropEnv returns env without the entries whose key matches drop.
func dropEnv(env []string, drop func(key string) bool) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !drop(k) {
			out = append(out, kv)
		}
	}
	return out
}

// goTool finds the go command; builds use whatever toolchain is on PATH.
func goTool() (string, error) {
	p, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the go command is needed to build the control plane: %w", err)
	}
	return p, nil
}

// runGo runs a short go command in dir and returns its stdout; failures carry
// the end of its stderr.
func (b *builder) runGo(ctx context.Context, dir string, extraEnv []string, args ...string) ([]byte, error) {
	goBin, err := goTool()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = dir
	cmd.Env = append(goEnv(), extraEnv...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("go %s: %w", args[0], ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, tail(stderr.String(), 30))
	}
	return out, nil
}

// runGoLong runs a go command that may take minutes, reporting every
// progressInterval how long it has run. Given -v, go prints each package it
// compiles; those are counted and the latest one is shown.
func (b *builder) runGoLong(ctx context.Context, what, dir string, extraEnv []string, args ...string) error {
	goBin, err := goTool()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = dir
	cmd.Env = append(goEnv(), extraEnv...)
	cmd.Stdout = io.Discard
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("go %s: %w", args[0], err)
	}

	var (
		mu       sync.Mutex
		compiled int
		last     string
		lines    []string // kept for the error message
	)
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			lines = append(lines, line)
			if len(lines) > 200 {
				lines = lines[len(lines)-100:]
			}
			// -v prints bare import paths; anything else is a diagnostic.
			if line != "" && !strings.ContainsAny(line, " \t:") {
				compiled++
				last = line
			}
			mu.Unlock()
		}
	}()

	ticker := time.NewTicker(progressInterval)
	defer ticker.Stop()
	waitDone := make(chan error, 1)
	go func() {
		<-scanDone // drain stderr before Wait closes the pipe
		waitDone <- cmd.Wait()
	}()
	for {
		select {
		case err := <-waitDone:
			if ctx.Err() != nil {
				return fmt.Errorf("go %s: %w", args[0], ctx.Err())
			}
			if err != nil {
				mu.Lock()
				defer mu.Unlock()
				return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, strings.Join(lastN(lines, 30), "\n"))
			}
			note := ""
			if slices.Contains(args, "-v") {
				note = compiledNote(compiled)
			}
			fmt.Fprintf(b.opts.Progress, "  %s: done in %s%s\n", what, time.Since(start).Round(time.Second), note)
			return nil
		case <-ticker.C:
			mu.Lock()
			activity := "resolving modules, checking the build cache or linking"
			if compiled > 0 {
				activity = fmt.Sprintf("%d packages compiled, last %s", compiled, last)
			}
			fmt.Fprintf(b.opts.Progress, "  %s: %s elapsed, %s\n", what, time.Since(start).Round(time.Second), activity)
			mu.Unlock()
		}
	}
}

// buildEtcd builds etcd from a generated module whose main calls etcdmain.Main:
// `go install go.etcd.io/etcd/...` fails because etcd's go.mod has replaces.
func (b *builder) buildEtcd(ctx context.Context, outDir string) error {
	mod, err := os.MkdirTemp("", "tidb-localpv-etcdbuild-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(mod)

	const mainGo = `package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
`
	if err := os.WriteFile(filepath.Join(mod, "main.go"), []byte(mainGo), 0o644); err != nil {
		return err
	}
	// go mod init writes the go line of the toolchain in use, which keeps
	// this module valid whatever Go version runs the build.
	steps := [][]string{
		{"mod", "init", "etcdbuild"},
		{"get", "go.etcd.io/etcd/server/v3@" + b.opts.EtcdVersion},
		{"mod", "tidy"},
	}
	for _, args := range steps {
		if _, err := b.runGo(ctx, mod, nil, args...); err != nil {
			return err
		}
	}
	return b.runGoLong(ctx, "etcd", mod, nil,
		"build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(outDir, "etcd"), ".")
}

// buildKwok installs kwok straight from its module: unlike kubernetes and
// etcd, kwok's go.mod has no replace directives, so `go install pkg@v` works.
func (b *builder) buildKwok(ctx context.Context, outDir string) error {
	return b.runGoLong(ctx, "kwok", outDir, []string{"GOBIN=" + outDir},
		"install", "-v", "-trimpath", "-ldflags", "-s -w", "sigs.k8s.io/kwok/cmd/kwok@"+b.opts.KwokVersion)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	return strings.Join(lastN(strings.Split(strings.TrimRight(s, "\n"), "\n"), n), "\n")
}

func lastN(lines []string, n int) []string {
	if len(lines) > n {
		return lines[len(lines)-n:]
	}
	return lines
}

// compiledNote says how much was compiled; with a warm Go build cache the
// answer is nothing, which is worth knowing when a build is slow.
func compiledNote(n int) string {
	if n == 0 {
		return ", all from the Go build cache"
	}
	return fmt.Sprintf(", %d packages compiled", n)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
