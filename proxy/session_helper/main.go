// stackspace-session keeps a terminal or command running inside a workspace
// while no client is connected (SPEC §5). The exec proxy copies this static
// binary into the workspace on first use and execs it; the session lives in
// the workspace, so a dropped client, a proxy restart or another proxy replica
// does not end it.
//
//	stackspace-session start --id ID [--tty] [--idle SECONDS] [--max N] -- CMD ARGS...
//	stackspace-session attach ID
//	stackspace-session list
//	stackspace-session kill ID
//
// start spawns a session daemon (its own Unix session, stdio on /dev/null)
// that runs CMD on a pty or on pipes, keeps the last RingBytes of output and
// the exit code, and listens on DIR/ID/sock (DIR: $STACKSPACE_SESSIONS_DIR,
// default /tmp/.stackspace/sessions). start then behaves like attach: its
// stdin and stdout are a byte pipe to that socket, on which the proxy speaks
// frames (see frame.go). The daemon ends the session after --idle seconds with
// no client attached, when a client acknowledges the exit ('D'), or with the
// workspace (its container or pod going away).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var validID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func baseDir() string {
	if d := os.Getenv("STACKSPACE_SESSIONS_DIR"); d != "" {
		return d
	}
	return "/tmp/.stackspace/sessions"
}

type options struct {
	id      string
	tty     bool
	idle    time.Duration
	max     int
	command []string
}

func parseOptions(args []string) (options, error) {
	o := options{idle: time.Hour, max: 32}
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "--tty":
			o.tty = true
		case "--id", "--idle", "--max":
			if i+1 >= len(args) {
				return o, fmt.Errorf("%s needs a value", a)
			}
			i++
			v := args[i]
			switch a {
			case "--id":
				o.id = v
			case "--idle":
				f, err := strconv.ParseFloat(v, 64)
				if err != nil || f <= 0 {
					return o, fmt.Errorf("bad --idle %q", v)
				}
				o.idle = time.Duration(f * float64(time.Second))
			case "--max":
				n, err := strconv.Atoi(v)
				if err != nil || n < 1 {
					return o, fmt.Errorf("bad --max %q", v)
				}
				o.max = n
			}
		case "--":
			o.command = args[i+1:]
			i = len(args)
		default:
			return o, fmt.Errorf("unknown option %q", a)
		}
	}
	if !validID.MatchString(o.id) {
		return o, errors.New("--id must be 1-64 of [A-Za-z0-9_-]")
	}
	if len(o.command) == 0 {
		return o, errors.New("no command after --")
	}
	return o, nil
}

func fail(code int, format string, a ...any) {
	fmt.Fprintf(os.Stderr, "stackspace-session: "+format+"\n", a...)
	os.Exit(code)
}

func main() {
	if len(os.Args) < 2 {
		fail(2, "usage: start|attach|list|kill")
	}
	switch os.Args[1] {
	case "start":
		cmdStart(os.Args[2:])
	case "daemon":
		cmdDaemon(os.Args[2:])
	case "attach":
		if len(os.Args) != 3 || !validID.MatchString(os.Args[2]) {
			fail(2, "usage: attach ID")
		}
		bridge(filepath.Join(baseDir(), os.Args[2], "sock"))
	case "list":
		out, _ := json.Marshal(listSessions())
		fmt.Println(string(out))
	case "kill":
		if len(os.Args) != 3 || !validID.MatchString(os.Args[2]) {
			fail(2, "usage: kill ID")
		}
		if _, err := query(filepath.Join(baseDir(), os.Args[2], "sock"), 'K'); err != nil {
			fail(3, "no session %s", os.Args[2])
		}
	default:
		fail(2, "unknown mode %q", os.Args[1])
	}
}

// cmdStart creates the session directory, spawns the daemon, waits until it
// listens and then bridges stdio to it.
func cmdStart(args []string) {
	o, err := parseOptions(args)
	if err != nil {
		fail(2, "%v", err)
	}
	if err := os.MkdirAll(baseDir(), 0o700); err != nil {
		fail(1, "%v", err)
	}
	if n := len(listSessions()); n >= o.max {
		fail(75, "too many sessions in this workspace (limit %d)", o.max)
	}
	dir := filepath.Join(baseDir(), o.id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		fail(73, "session %s exists", o.id)
	}
	self, err := os.Executable()
	if err != nil {
		fail(1, "%v", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		fail(1, "%v", err)
	}
	cmd := exec.Command(self, append([]string{"daemon"}, args...)...)
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		fail(1, "%v", err)
	}
	w.Close()
	msg, _ := io.ReadAll(r) // the daemon closes its end once it listens
	if string(msg) != "ok" {
		_ = os.RemoveAll(dir)
		fail(1, "session daemon failed: %s", msg)
	}
	_ = cmd.Process.Release()
	bridge(filepath.Join(dir, "sock"))
}

// bridge copies stdin to the session socket and the socket to stdout. EOF on
// stdin means the proxy went away (a half-close of the user's stdin is a
// frame), so the whole connection ends: the client is detached.
func bridge(sock string) {
	conn, err := net.Dial("unix", sock)
	if err != nil {
		fail(3, "no session at %s", filepath.Dir(sock))
	}
	go func() {
		_, _ = io.Copy(conn, os.Stdin)
		_ = conn.Close()
	}()
	_, _ = io.Copy(os.Stdout, conn)
}

// query sends one frame of kind and returns the daemon's status answer.
func query(sock string, kind byte) (map[string]any, error) {
	conn, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := writeFrame(conn, kind, nil); err != nil {
		return nil, err
	}
	k, payload, err := readFrame(conn)
	if err != nil || k != 'S' {
		return nil, fmt.Errorf("no status: %v", err)
	}
	var st map[string]any
	return st, json.Unmarshal(payload, &st)
}

// listSessions asks every session daemon for its status; a directory whose
// daemon is gone (killed with the workspace's processes) is removed.
func listSessions() []map[string]any {
	out := []map[string]any{}
	entries, _ := os.ReadDir(baseDir())
	for _, e := range entries {
		if !e.IsDir() || !validID.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(baseDir(), e.Name())
		st, err := query(filepath.Join(dir, "sock"), 'Q')
		if err != nil {
			if info, ierr := e.Info(); ierr == nil && time.Since(info.ModTime()) > 30*time.Second {
				_ = os.RemoveAll(dir)
			}
			continue
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		a, _ := out[i]["started"].(float64)
		b, _ := out[j]["started"].(float64)
		return a < b
	})
	return out
}

func cmdDaemon(args []string) {
	o, err := parseOptions(args)
	syscall.CloseOnExec(3) // the command must not hold the readiness pipe open
	ready := os.NewFile(3, "ready")
	if err != nil {
		fmt.Fprint(ready, err.Error())
		os.Exit(2)
	}
	// Caught, not ignored: an ignored signal would stay ignored in the command.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	dir := filepath.Join(baseDir(), o.id)
	ln, err := net.Listen("unix", filepath.Join(dir, "sock"))
	if err != nil {
		fmt.Fprint(ready, err.Error())
		os.Exit(1)
	}
	s := newSession(o)
	s.launch()
	go s.accept(ln)
	fmt.Fprint(ready, "ok")
	ready.Close()
	s.supervise()
	_ = ln.Close()
	_ = os.RemoveAll(dir)
}

// procStat returns (session id, state) of a process from /proc/PID/stat.
func procStat(pid string) (int, string, bool) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, "", false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, "", false
	}
	f := strings.Fields(s[i+1:]) // state ppid pgrp session ...
	if len(f) < 4 {
		return 0, "", false
	}
	sid, _ := strconv.Atoi(f[3])
	return sid, f[0], true
}

// killSession SIGKILLs every process of the Unix session led by leader (job
// control gives a shell's jobs their own process groups, not sessions);
// processes that made their own session (setsid daemons) are left alone.
func killSession(leader int) {
	for round := 0; round < 50; round++ {
		_ = syscall.Kill(-leader, syscall.SIGKILL)
		left := false
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == os.Getpid() {
				continue
			}
			if sid, state, ok := procStat(e.Name()); ok && sid == leader && state != "Z" {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				left = true
			}
		}
		if !left {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
