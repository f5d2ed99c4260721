package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one process of a case's path. Its output goes to a log file under
// the run's directory; lines are also offered to a matcher so the harness can
// learn bound addresses from them.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	lines   chan string // every output line, until the process's pipes close
	readers sync.WaitGroup
	exited  chan struct{}
	waitErr error
}

// startProc starts argv in its own process group, killed with SIGKILL if the
// harness dies (Pdeathsig), stdout and stderr logged to dir/name.log.
func startProc(dir, name string, argv ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, lines: make(chan string, 1024), exited: make(chan struct{})}
	var mu sync.Mutex // serializes writes to logf from the two readers
	for _, r := range []io.Reader{stdout, stderr} {
		p.readers.Go(func() {
			sc := bufio.NewScanner(r)
			sc.Buffer(make([]byte, 64*1024), 1<<20)
			for sc.Scan() {
				line := sc.Text()
				mu.Lock()
				fmt.Fprintln(logf, line)
				mu.Unlock()
				select {
				case p.lines <- line:
				default: // nobody is waiting for lines any more; the log has it
				}
			}
		})
	}
	go func() {
		p.readers.Wait()
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// waitLine returns the first output line containing substr, or fails when
// the process exits or timeout passes.
func (p *proc) waitLine(ctx context.Context, substr string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case line := <-p.lines:
			if strings.Contains(line, substr) {
				return line, nil
			}
		case <-p.exited:
			return "", fmt.Errorf("wait for %s %q: exited (%v); log: %s", p.name, substr, p.waitErr, p.tail())
		case <-t.C:
			return "", fmt.Errorf("wait for %s %q: no such line after %v; log: %s", p.name, substr, timeout, p.tail())
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

// tail is the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return p.logPath
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return p.logPath + "\n" + string(b)
}

// stop ends the process group: SIGTERM, then SIGKILL after a grace period.
func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = syscall.Kill(-p.pid(), syscall.SIGTERM)
	t := time.NewTimer(3 * time.Second)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
		<-p.exited
	}
}

// alive reports whether the process is still running.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports; reading it would need cgo
// (sysconf(_SC_CLK_TCK)).
const clockTicks = 100

// cpuTime is utime+stime of pid, all threads, from /proc/PID/stat.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu time: %w", err)
	}
	// The command name (field 2) may hold spaces; fields after its closing
	// parenthesis start at field 3 (state).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("read cpu time: /proc/%d/stat: unexpected format", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("read cpu time: /proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// cpuTimes is the CPU time of each of pids.
func cpuTimes(pids []int) ([]time.Duration, error) {
	ts := make([]time.Duration, len(pids))
	for i, pid := range pids {
		d, err := cpuTime(pid)
		if err != nil {
			return nil, err
		}
		ts[i] = d
	}
	return ts, nil
}

// rss is VmRSS of pid in bytes, from /proc/PID/status.
func rss(pid int) (int64, error) { return statusBytes(pid, "VmRSS:") }

// rssAnon is the anonymous part of VmRSS (heap, stacks): the memory that is
// the process's own, as opposed to pages of its binary in the page cache.
func rssAnon(pid int) (int64, error) { return statusBytes(pid, "RssAnon:") }

func statusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read rss: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		v, ok := strings.CutPrefix(line, field)
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("read rss: /proc/%d/status: %w", pid, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("read rss: /proc/%d/status: no %s", pid, field)
}

// freePort returns a port on ip that was free a moment ago. Verge's
// --inbound and --outbound flags and HAProxy's bind take fixed ports, so
// the harness picks them; every case uses its own loopback IP, so another
// process taking the port in between is unlikely.
func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, fmt.Errorf("pick port on %s: %w", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// freePorts picks n distinct ports on ip, holding each listener until all
// are picked so none repeats.
func freePorts(ip string, n int) ([]int, error) {
	ports := make([]int, 0, n)
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return nil, fmt.Errorf("pick port on %s: %w", ip, err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitFor polls cond every 50ms until it returns nil, ctx ends or timeout
// passes; the last error explains a timeout.
func waitFor(ctx context.Context, what string, timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// dialable succeeds when addr accepts TCP connections.
func dialable(addr string) func() error {
	return func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	}
}

// httpOK succeeds when GET url answers 200.
func httpOK(url string) func() error {
	c := &http.Client{Timeout: 2 * time.Second}
	return func() error {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: status %d", url, resp.StatusCode)
		}
		return nil
	}
}
