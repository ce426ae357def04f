package cluster

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// exitInterrupted is the conventional exit status after SIGINT (128+2).
const exitInterrupted = 130

// KillOnSignal calls stop and exits with status 130 on SIGINT or SIGTERM,
// so an interrupted playground leaves no control plane behind. The returned
// cancel stops listening; call it once the cluster is stopped normally.
func KillOnSignal(stop func()) (cancel func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			stop()
			os.Exit(exitInterrupted)
		case <-done:
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(sigs)
			close(done)
		})
	}
}
