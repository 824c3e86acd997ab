"""An open file unlinked while it still has another name (CRIU zdtm's unlink_fstat03):
it creates DIR/data, links it as DIR/data.link, opens DIR/data, unlinks that name,
then writes to the open file and leaves its offset inside it. CRIU can only reopen
such a file through a link of its own (link-remap).

It also holds SIZE_MB of random memory (a test can catch its dump under way). On
SIGUSR1 it reports what its open file holds now, read through the fd it kept.

usage: unlinked.py DIR SIZE_MB REPORT
report: "<pid> <sha256 of the file's bytes> <size> <offset> <inode> <checks>"
"""

import hashlib
import os
import sys
import time

from _report import on_usr1, write_report

folder, report = sys.argv[1], sys.argv[3]
ballast = bytearray(os.urandom(int(sys.argv[2]) << 20))
path = os.path.join(folder, "data")
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.link(path, path + ".link")
os.unlink(path)
os.write(fd, os.urandom(5000) + b"written after the unlink")
os.lseek(fd, 3000, os.SEEK_SET)
checks = 0


def check() -> None:
    global checks
    checks += 1
    st = os.fstat(fd)
    digest = hashlib.sha256(os.pread(fd, st.st_size, 0)).hexdigest()
    offset = os.lseek(fd, 0, os.SEEK_CUR)
    write_report(report, f"{os.getpid()} {digest} {st.st_size} {offset} {st.st_ino} {checks}")


on_usr1(check)  # before the first report: a process that reported answers SIGUSR1
check()
while True:
    time.sleep(0.05)
