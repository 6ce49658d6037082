"""Reaching a TCP port inside a workspace without a route to it.

The proxy never connects to a workspace's IP (a remote Docker host over TLS or
SSH, or a pod network, is not routable from it) and no port is ever published.
On Docker it execs :data:`RELAY_SH` in the workspace, which connects to
``127.0.0.1:PORT`` and copies bytes between that socket and its stdin/stdout;
on Kubernetes the API server's pods/portforward does the same job
(:mod:`proxy.forward`).

The relay picks the best tool the image has, so any image with ``/bin/sh`` works:

- ``perl`` (Debian's perl-base, in the default image): stdin EOF becomes a TCP
  half-close (``shutdown(SHUT_WR)``), so the server still answers;
- ``nc`` (BusyBox): half-closes likewise;
- ``bash`` ``/dev/tcp``: no half-close (bash cannot shut a socket down).

Each ends when the server closes its side (after the last byte is out); a
failed connect exits non-zero with the reason on stderr.
"""

from __future__ import annotations

from proxy.protocol import is_port

# One select loop; no buffering beyond one read. $ARGV[0] is the port.
PERL_RELAY = r"""
use strict; use IO::Socket::INET; use IO::Select;
$SIG{PIPE} = "IGNORE";
my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1", PeerPort => $ARGV[0], Proto => "tcp")
  or do { print STDERR "connect to 127.0.0.1:$ARGV[0] in the workspace failed: $!\n"; exit 1 };
binmode STDIN; binmode STDOUT;
my $sel = IO::Select->new(\*STDIN, $s);
while ($sel->count) {
  for my $fh ($sel->can_read) {
    my $n = sysread($fh, my $buf, 65536);
    if (!$n) {
      exit 0 if $fh == $s;
      $sel->remove($fh); shutdown($s, 1); next;
    }
    my $to = $fh == $s ? \*STDOUT : $s;
    for (my $o = 0; $o < $n;) {
      my $w = syswrite($to, $buf, $n - $o, $o);
      exit($fh == $s ? 0 : 1) unless defined $w;
      $o += $w;
    }
  }
}
"""

# $1: the port, $2: PERL_RELAY. bash: the reader runs in front, so the relay ends
# with the server's EOF; the writer's stdin is named (a background job's is /dev/null).
RELAY_SH = r"""
p=$1
if command -v perl >/dev/null 2>&1; then exec perl -e "$2" "$p"; fi
if command -v nc >/dev/null 2>&1; then exec nc 127.0.0.1 "$p"; fi
if command -v bash >/dev/null 2>&1; then
  exec bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    cat >&3 <&0 & cat <&3; kill $! 2>/dev/null; exit 0' relay "$p"
fi
echo "the workspace image has no perl, nc or bash to reach port $p" >&2
exit 127
"""


def relay_command(port: int) -> list[str]:
    """The exec argv that connects to ``127.0.0.1:port`` inside the workspace."""
    if not is_port(port):
        raise ValueError("port must be in 1..65535")
    return ["/bin/sh", "-c", RELAY_SH, "relay", str(port), PERL_RELAY]
