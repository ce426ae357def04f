package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeComponent writes its one output after run returns nil.
func fakeComponent(dir, name string, run func() error) component {
	out := filepath.Join(dir, name, name)
	return component{name, []string{out}, func(_ *builder, _ context.Context, outDir string) error {
		if err := run(); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(outDir, name), []byte(name), 0o755)
	}}
}

func TestBuildMissing_BuildsAStageSideBySideAndTheNextStageAfterIt(t *testing.T) {
	cache := t.TempDir()
	opts := BuildOptions{CacheDir: cache, Progress: io.Discard}
	// Each of the first stage's builds waits for the other to start: one
	// build at a time would never get past the first.
	var started sync.WaitGroup
	started.Add(2)
	both := make(chan struct{})
	go func() { started.Wait(); close(both) }()
	waitForTheOther := func() error {
		started.Done()
		select {
		case <-both:
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("the other build of the stage never started")
		}
	}
	var mu sync.Mutex
	var order []string
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	a := fakeComponent(cache, "a", func() error { err := waitForTheOther(); note("a"); return err })
	b := fakeComponent(cache, "b", func() error { err := waitForTheOther(); note("b"); return err })
	c := fakeComponent(cache, "c", func() error {
		for _, first := range []component{a, b} {
			if _, err := os.Stat(first.outputs[0]); err != nil {
				return fmt.Errorf("the second stage started before the first was complete: %w", err)
			}
		}
		note("c")
		return nil
	})
	require.NoError(t, buildMissing(t.Context(), opts, []component{a, b}, []component{c}))
	require.ElementsMatch(t, []string{"a", "b"}, order[:2])
	require.Equal(t, "c", order[2])
	for _, comp := range []component{a, b, c} {
		require.FileExists(t, comp.outputs[0])
	}
}

func TestBuildMissing_BuildsOnlyWhatIsMissingAndNamesWhatFailed(t *testing.T) {
	cache := t.TempDir()
	opts := BuildOptions{CacheDir: cache, Progress: io.Discard}
	built := fakeComponent(cache, "built", func() error { return errors.New("built again") })
	require.NoError(t, os.MkdirAll(filepath.Dir(built.outputs[0]), 0o755))
	require.NoError(t, os.WriteFile(built.outputs[0], []byte("old"), 0o755))
	broken := fakeComponent(cache, "broken", func() error { return errors.New("compile error") })
	fine := fakeComponent(cache, "fine", func() error { return nil })
	later := fakeComponent(cache, "later", func() error { return errors.New("a stage after a failed one ran") })

	err := buildMissing(t.Context(), opts, []component{built, broken, fine}, []component{later})
	require.ErrorContains(t, err, "build broken: compile error")
	require.NotContains(t, err.Error(), "built again")
	require.NotContains(t, err.Error(), "later")
	require.FileExists(t, fine.outputs[0], "a build beside a failed one still lands")
	require.NoFileExists(t, broken.outputs[0])
	data, err := os.ReadFile(built.outputs[0])
	require.NoError(t, err)
	require.Equal(t, "old", string(data))
}
