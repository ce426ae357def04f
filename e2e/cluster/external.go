package cluster

import "syscall"

// Process is a program run beside the control plane — our agents,
// controllers and the PD simulator — with the same process-group and
// parent-death handling as the components.
type Process struct{ p *process }

// StartProcess starts binary with args and env, logging to <logDir>/<name>.log.
func StartProcess(name, binary string, args, env []string, logDir string) (*Process, error) {
	p, err := startProcess(name, binary, args, env, logDir)
	if err != nil {
		return nil, err
	}
	return &Process{p: p}, nil
}

// Stop sends SIGTERM, then SIGKILL after a grace period, and waits.
func (p *Process) Stop() { p.p.stop() }

// Kill kills the process group at once (a crash, as far as the program can
// tell) and waits until it is reaped.
func (p *Process) Kill() {
	killGroup(p.p.pid(), syscall.SIGKILL)
	<-p.p.done
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool { return p.p.exited() }

// Pid is the process (and process group) id.
func (p *Process) Pid() int { return p.p.pid() }

// LogPath is where its output goes.
func (p *Process) LogPath() string { return p.p.logPath }

// ExitError waits for the exit and describes it with the end of the log.
func (p *Process) ExitError() error { return p.p.exitError() }
