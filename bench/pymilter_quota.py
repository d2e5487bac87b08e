#!/usr/bin/python3
"""A minimal pymilter doing overquota's check, the contrast in bench/postfix.ts and bench/milter-wire.ts.

    /usr/bin/python3 bench/pymilter_quota.py inet:PORT@127.0.0.1 SPOOL_DIR [LIMIT_BYTES]

Debian's python3-milter (import Milter: libmilter underneath, one thread per connection). At RCPT:
take the recipient's local part (angle brackets off, +extension cut, lower case, as overquota
does with its defaults), lstat SPOOL_DIR/LOCAL (an mbox file), and answer CONTINUE when it is
missing or smaller than the limit (default 200M = 200 * 1024 * 1024), else 452 4.2.2 Mailbox
full, try again later and TEMPFAIL. No cache. One short line per recipient on stdout
("decision 250 LOCAL" or "decision 452 LOCAL", one unbuffered write(2)), as overquota writes its
decision line: the bench counts them to prove every message went through this milter.

Negotiation: no CONNECT, HELO, MAIL, header, end-of-header, body or unknown callbacks (the P_NO*
bits, via @nocallback, pymilter's default for callbacks not overridden); RCPT and DATA are
answered. DATA is answered on purpose, as overquota does (src/faces/milter/session.ts): with DATA
skipped Postfix sends the DATA macros as a lone packet nobody answers and its end-of-message
write then waits ~40 ms for the delayed ACK (Nagle), which would measure TCP, not the milter
(BENCHMARKS.md, Postfix section). Prints "ready" on stdout once it is about to accept.
"""
import os
import stat
import sys

import Milter

SPOOL = ''
LIMIT = 200 * 1024 * 1024


def local_part(rcpt):
    addr = rcpt.strip()
    if addr.startswith('<') and addr.endswith('>'):
        addr = addr[1:-1].strip()
    at = addr.rfind('@')
    local = addr if at < 0 else addr[:at]
    local = local.lower()
    plus = local.find('+')
    if plus > 0:
        local = local[:plus]
    return local


def decision(code, local):
    os.write(1, b'decision %s %s\n' % (code, local.encode('utf-8', 'surrogateescape')))


class QuotaMilter(Milter.Base):
    def envrcpt(self, to, *params):
        local = local_part(to)
        if not local or '/' in local or local in ('.', '..'):
            decision(b'250', local)
            return Milter.CONTINUE  # overquota: "no recipient", DUNNO
        try:
            st = os.lstat(os.path.join(SPOOL, local))
        except FileNotFoundError:
            decision(b'250', local)
            return Milter.CONTINUE  # no mbox yet: empty, room
        if stat.S_ISREG(st.st_mode) and st.st_size >= LIMIT:
            decision(b'452', local)
            self.setreply('452', '4.2.2', 'Mailbox full, try again later')
            return Milter.TEMPFAIL
        decision(b'250', local)
        return Milter.CONTINUE

    def data(self):
        return Milter.CONTINUE

    def eom(self):
        return Milter.ACCEPT


def main():
    global SPOOL, LIMIT
    if len(sys.argv) not in (3, 4):
        sys.stderr.write(__doc__)
        return 2
    socket, SPOOL = sys.argv[1], os.path.realpath(sys.argv[2])
    if len(sys.argv) == 4:
        LIMIT = int(sys.argv[3])
    Milter.factory = QuotaMilter
    Milter.set_flags(0)  # no message modifications
    print('ready', flush=True)
    Milter.runmilter('pymilter-quota', socket, timeout=60)
    return 0


if __name__ == '__main__':
    sys.exit(main())
