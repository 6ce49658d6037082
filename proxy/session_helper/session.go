package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// RingBytes of output are kept for replay (SPEC: at least the last 1 MiB).
const (
	RingBytes = 2 << 20
	readChunk = 32 << 10
	sendChunk = 256 << 10
)

type chunk struct {
	off  int64
	kind byte // 'O' or 'E'
	data []byte
}

type client struct {
	cursor int64 // offset of the next output byte to send
	gone   bool
}

type session struct {
	o       options
	started time.Time

	mu         sync.Mutex
	cond       *sync.Cond
	chunks     []chunk
	total      int64 // output bytes produced so far
	kept       int64 // bytes in chunks
	clients    map[*client]struct{}
	lastDetach time.Time
	exited     bool
	code       int
	ending     bool

	proc    *os.Process
	ptmx    *os.File
	stdin   *os.File // pipe mode
	readers sync.WaitGroup
}

func newSession(o options) *session {
	s := &session{o: o, started: time.Now(), clients: map[*client]struct{}{}}
	s.cond = sync.NewCond(&s.mu)
	s.lastDetach = s.started
	return s
}

func (s *session) start() int64 {
	if len(s.chunks) == 0 {
		return s.total
	}
	return s.chunks[0].off
}

func (s *session) minCursor() int64 {
	m := s.total
	for c := range s.clients {
		if !c.gone && c.cursor < m {
			m = c.cursor
		}
	}
	return m
}

// add appends output. While a client is attached, output waits until that
// client has been sent what the ring would drop (back-pressure, so an attached
// reader loses nothing); with none attached the oldest output is dropped.
func (s *session) add(kind byte, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.exited && !s.ending && len(s.clients) > 0 &&
		s.total+int64(len(data))-s.minCursor() > RingBytes {
		s.cond.Wait()
	}
	if s.exited || s.ending {
		return
	}
	s.chunks = append(s.chunks, chunk{s.total, kind, data})
	s.total += int64(len(data))
	s.kept += int64(len(data))
	for len(s.chunks) > 1 && s.kept-int64(len(s.chunks[0].data)) >= RingBytes {
		s.kept -= int64(len(s.chunks[0].data))
		s.chunks[0] = chunk{}
		s.chunks = s.chunks[1:]
	}
	s.cond.Broadcast()
}

func (s *session) pump(r io.Reader, kind byte) {
	defer s.readers.Done()
	for {
		buf := make([]byte, readChunk)
		n, err := r.Read(buf)
		if n > 0 {
			s.add(kind, buf[:n])
		}
		if err != nil {
			return
		}
	}
}

func ioctl(f *os.File, req uintptr, arg unsafe.Pointer) error {
	var errno syscall.Errno
	err := withFd(f, func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, req, uintptr(arg))
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

// withFd runs fn on f's descriptor without f.Fd(), which would make it blocking.
func withFd(f *os.File, fn func(uintptr)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(fn)
}

func openPTY() (*os.File, *os.File, error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	var unlock int32
	if err := ioctl(m, syscall.TIOCSPTLCK, unsafe.Pointer(&unlock)); err != nil {
		m.Close()
		return nil, nil, err
	}
	var n uint32
	if err := ioctl(m, syscall.TIOCGPTN, unsafe.Pointer(&n)); err != nil {
		m.Close()
		return nil, nil, err
	}
	sl, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, sl, nil
}

func (s *session) resize(w, h int) {
	if s.ptmx == nil || w <= 0 || h <= 0 || w > 10000 || h > 10000 {
		return
	}
	ws := struct{ Row, Col, X, Y uint16 }{uint16(h), uint16(w), 0, 0}
	_ = ioctl(s.ptmx, syscall.TIOCSWINSZ, unsafe.Pointer(&ws))
}

// launch starts the command; a command that cannot start still makes a
// session whose output says why and whose exit code is 126 or 127, as a shell's.
func (s *session) launch() {
	cmd := exec.Command(s.o.command[0], s.o.command[1:]...)
	cmd.Env = append(os.Environ(), "STACKSPACE_SESSION="+s.o.id)
	var closeAfter []*os.File
	var err error
	if s.o.tty {
		var slave *os.File
		s.ptmx, slave, err = openPTY()
		if err == nil {
			s.resize(80, 24)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
			closeAfter = append(closeAfter, slave)
		}
	} else {
		var inR, outR, outW, errR, errW *os.File
		if inR, s.stdin, err = os.Pipe(); err == nil {
			if outR, outW, err = os.Pipe(); err == nil {
				errR, errW, err = os.Pipe()
			}
		}
		if err == nil {
			cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			closeAfter = append(closeAfter, inR, outW, errW)
			s.readers.Add(2)
			go s.pump(outR, 'O')
			go s.pump(errR, 'E')
		}
	}
	if err == nil {
		err = cmd.Start()
	}
	for _, f := range closeAfter {
		f.Close()
	}
	if err != nil {
		code := 126
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			code = 127
		}
		kind := byte('E')
		if s.o.tty {
			kind = 'O'
		}
		s.add(kind, []byte(fmt.Sprintf("stackspace-session: %v\r\n", err)))
		s.mu.Lock()
		s.exited, s.code = true, code
		s.mu.Unlock()
		return
	}
	s.proc = cmd.Process
	if s.ptmx != nil {
		s.readers.Add(1)
		go s.pump(s.ptmx, 'O')
	}
	go s.wait(cmd)
}

func (s *session) wait(cmd *exec.Cmd) {
	err := cmd.Wait()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if st, ok := ee.Sys().(syscall.WaitStatus); ok && st.Signaled() {
			code = 128 + int(st.Signal())
		} else {
			code = ee.ExitCode()
		}
	} else if err != nil {
		code = 1
	}
	// The last output may still be in the pipe or pty: read it, but not what
	// a background process that kept the descriptors open prints later.
	drained := make(chan struct{})
	go func() { s.readers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(time.Second):
	}
	s.mu.Lock()
	s.exited, s.code = true, code
	s.cond.Broadcast()
	s.mu.Unlock()
}

func (s *session) status() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := map[string]any{
		"id": s.o.id, "command": s.o.command, "tty": s.o.tty,
		"started": float64(s.started.UnixNano()) / 1e9, "running": !s.exited,
		"exit_code": nil, "attached": len(s.clients), "output_bytes": s.total,
	}
	if s.exited {
		st["exit_code"] = s.code
	}
	b, _ := json.Marshal(st)
	return b
}

func (s *session) kill() {
	s.mu.Lock()
	exited := s.exited
	s.mu.Unlock()
	// Once the command was reaped its pid may belong to another process: an
	// ended session only goes away (what it left running in the background stays).
	if s.proc != nil && !exited {
		killSession(s.proc.Pid)
	}
	s.mu.Lock()
	s.ending = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

func (s *session) accept(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go s.serve(conn)
	}
}

func (s *session) serve(conn net.Conn) {
	r := bufio.NewReaderSize(conn, 64<<10)
	kind, payload, err := readFrame(r)
	if err != nil {
		conn.Close()
		return
	}
	switch kind {
	case 'Q':
		_ = writeFrame(conn, 'S', s.status())
		conn.Close()
	case 'K':
		s.kill()
		_ = writeFrame(conn, 'S', s.status())
		conn.Close()
	case 'A':
		var req struct {
			Offset int64 `json:"offset"`
		}
		_ = json.Unmarshal(payload, &req)
		s.attach(conn, r, req.Offset)
	default:
		conn.Close()
	}
}

func (s *session) attach(conn net.Conn, r *bufio.Reader, offset int64) {
	c := &client{}
	s.mu.Lock()
	c.cursor = max(min(offset, s.total), s.start())
	s.clients[c] = struct{}{}
	hello, _ := json.Marshal(map[string]any{
		"id": s.o.id, "offset": c.cursor, "tty": s.o.tty, "command": s.o.command,
		"started": float64(s.started.UnixNano()) / 1e9})
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.clients, c)
		s.lastDetach = time.Now()
		s.cond.Broadcast()
		s.mu.Unlock()
		conn.Close()
	}()
	if writeFrame(conn, 'H', hello) != nil {
		return
	}
	go s.readClient(c, conn, r)
	s.writeClient(c, conn)
}

func (s *session) readClient(c *client, conn net.Conn, r *bufio.Reader) {
	defer func() {
		s.mu.Lock()
		c.gone = true
		s.cond.Broadcast()
		s.mu.Unlock()
		conn.Close() // unblocks a writer stuck on a client that stopped reading
	}()
	for {
		kind, payload, err := readFrame(r)
		if err != nil {
			return
		}
		switch kind {
		case 'I':
			if s.ptmx != nil {
				_, _ = s.ptmx.Write(payload)
			} else if s.stdin != nil {
				_, _ = s.stdin.Write(payload)
			}
		case 'C':
			if s.ptmx == nil && s.stdin != nil {
				s.stdin.Close()
			}
		case 'R':
			var size struct{ Width, Height int }
			if json.Unmarshal(payload, &size) == nil {
				s.resize(size.Width, size.Height)
			}
		case 'D':
			s.mu.Lock()
			if s.exited {
				s.ending = true
				s.cond.Broadcast()
			}
			s.mu.Unlock()
			return
		}
	}
}

func (s *session) writeClient(c *client, conn net.Conn) {
	sentExit := false
	for {
		s.mu.Lock()
		for !c.gone && !s.ending && c.cursor >= s.total && (!s.exited || sentExit) {
			s.cond.Wait()
		}
		if c.gone || s.ending {
			s.mu.Unlock()
			return
		}
		if c.cursor < s.total {
			c.cursor = max(c.cursor, s.start())
			var kind byte
			var data []byte
			for i := len(s.chunks) - 1; i >= 0; i-- {
				if ch := s.chunks[i]; ch.off <= c.cursor {
					kind, data = ch.kind, ch.data[c.cursor-ch.off:]
					// join the following chunks of the same stream: fewer frames
					for j := i + 1; j < len(s.chunks) && s.chunks[j].kind == kind &&
						len(data)+len(s.chunks[j].data) <= sendChunk; j++ {
						data = append(data[:len(data):len(data)], s.chunks[j].data...)
					}
					break
				}
			}
			s.mu.Unlock()
			if writeFrame(conn, kind, data) != nil {
				return
			}
			s.mu.Lock()
			c.cursor += int64(len(data))
			s.cond.Broadcast()
			s.mu.Unlock()
			continue
		}
		code := s.code
		s.mu.Unlock()
		if writeFrame(conn, 'X', []byte(fmt.Sprintf(`{"code":%d}`, code))) != nil {
			return
		}
		sentExit = true
	}
}

// supervise returns when the session ends: the exit was acknowledged, it was
// killed, or no client was attached for the idle time (the command is killed).
func (s *session) supervise() {
	for {
		time.Sleep(250 * time.Millisecond)
		s.mu.Lock()
		ending := s.ending
		idle := len(s.clients) == 0 && time.Since(s.lastDetach) > s.o.idle
		exited := s.exited
		s.mu.Unlock()
		if ending {
			return
		}
		if idle {
			if !exited && s.proc != nil {
				killSession(s.proc.Pid)
			}
			return
		}
	}
}
