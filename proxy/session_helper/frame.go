package main

// Frames on the session socket (and so on the attach exec's stdio): one kind
// byte, a big-endian uint32 payload length, the payload. proxy/session_frames.py
// is the other side.
//
// client -> daemon: 'A' attach {"offset": N} (first frame), 'Q' status query,
// 'K' kill; once attached: 'I' stdin bytes, 'C' close stdin, 'R' resize
// {"Width": w, "Height": h}, 'D' the exit status reached the user: end now.
// daemon -> client: 'H' hello {"id", "offset", "tty", ...} (offset: where the
// replay starts), 'O' stdout bytes, 'E' stderr bytes, 'X' exit {"code": n},
// 'S' status JSON.

import (
	"encoding/binary"
	"fmt"
	"io"
)

const maxFrame = 1 << 20

func writeFrame(w io.Writer, kind byte, payload []byte) error {
	buf := make([]byte, 5+len(payload))
	buf[0] = kind
	binary.BigEndian.PutUint32(buf[1:5], uint32(len(payload)))
	copy(buf[5:], payload)
	_, err := w.Write(buf)
	return err
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:5])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes", n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, err
	}
	return hdr[0], payload, nil
}
