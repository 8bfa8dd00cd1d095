"""powerfs: a FUSE filesystem that forgets, on command, every write not yet fsync'ed.

kill -9 leaves the page cache alone, so it proves nothing about fsync. Under powerfs the page
cache is this process's memory: each file keeps what readers see and, apart, what its last
fsync/fdatasync made durable; SIGUSR1 is the power cut (every file goes back to its durable
bytes, files never synced come back empty), after which the process prints `cut N` on stdout.
Names (create, rename, unlink, mkdir) are durable at once, as on a journalled filesystem.

Run by Debian's python3 (python3-pyfuse3, trio) as its own process:
    python3 powerfs.py MOUNTPOINT
It prints `mounted` when ready; SIGTERM unmounts. It imports nothing from gatewayd.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import time

import pyfuse3
import trio


class Node:
    __slots__ = ("inode", "mode", "data", "durable", "children", "nlink", "mtime_ns")

    def __init__(self, inode: int, mode: int) -> None:
        self.inode = inode
        self.mode = mode
        self.data = bytearray()
        self.durable = b""
        self.children: dict[bytes, int] = {}
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        self.mtime_ns = time.time_ns()


class PowerFS(pyfuse3.Operations):
    def __init__(self) -> None:
        super().__init__()
        self.nodes = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755)}
        self.next_inode = pyfuse3.ROOT_INODE + 1
        self.cuts = 0
        self.synced_bytes = 0
        self.lost_bytes = 0

    # -- the power cut ---------------------------------------------------------------------

    def cut(self) -> None:
        for node in self.nodes.values():
            if not stat.S_ISDIR(node.mode) and bytes(node.data) != node.durable:
                self.lost_bytes += abs(len(node.data) - len(node.durable)) or len(node.data)
                node.data = bytearray(node.durable)
        self.cuts += 1

    # -- helpers -----------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        attrs.st_mode = node.mode
        attrs.st_nlink = node.nlink
        attrs.st_uid = os.getuid()
        attrs.st_gid = os.getgid()
        attrs.st_size = len(node.data)
        attrs.st_blksize = 4096
        attrs.st_blocks = (len(node.data) + 511) // 512
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = node.mtime_ns
        attrs.entry_timeout = 0
        attrs.attr_timeout = 0
        return attrs

    def _new(self, parent: int, name: bytes, mode: int) -> Node:
        directory = self._node(parent)
        if name in directory.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = Node(self.next_inode, mode)
        self.next_inode += 1
        self.nodes[node.inode] = node
        directory.children[name] = node.inode
        return node

    # -- metadata ----------------------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        directory = self._node(parent_inode)
        if name == b".":
            return self._attrs(directory)
        inode = directory.children.get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(self._node(inode))

    async def getattr(self, inode, ctx=None):
        return self._attrs(self._node(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if fields.update_size:
            size = attr.st_size
            if size < len(node.data):
                del node.data[size:]
            else:
                node.data.extend(b"\0" * (size - len(node.data)))
        if fields.update_mode:
            node.mode = (node.mode & ~0o7777) | (attr.st_mode & 0o7777)
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        return self._attrs(node)

    async def mkdir(self, parent_inode, name, mode, ctx):
        node = self._new(parent_inode, name, stat.S_IFDIR | (mode & 0o7777))
        self._node(parent_inode).nlink += 1
        return self._attrs(node)

    async def rmdir(self, parent_inode, name, ctx):
        directory = self._node(parent_inode)
        inode = directory.children.get(name)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self._node(inode).children:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del directory.children[name]
        del self.nodes[inode]
        directory.nlink -= 1

    async def unlink(self, parent_inode, name, ctx):
        directory = self._node(parent_inode)
        inode = directory.children.pop(name, None)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        node = self._node(inode)
        node.nlink -= 1
        if node.nlink <= 0:
            del self.nodes[inode]  # open handles keep their inode number only: reads of it fail

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old_dir, new_dir = self._node(parent_inode_old), self._node(parent_inode_new)
        inode = old_dir.children.get(name_old)
        if inode is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        replaced = new_dir.children.get(name_new)
        if replaced is not None and replaced != inode:
            self.nodes.pop(replaced, None)
        del old_dir.children[name_old]
        new_dir.children[name_new] = inode

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        entries = sorted(self._node(fh).children.items())
        for index, (name, inode) in enumerate(entries[start_id:], start_id + 1):
            node = self.nodes.get(inode)
            if node is not None and not pyfuse3.readdir_reply(token, name, self._attrs(node),
                                                              index):
                return

    async def releasedir(self, fh):
        return

    async def fsyncdir(self, fh, datasync):
        return

    async def statfs(self, ctx):
        st = pyfuse3.StatvfsData()
        used = sum(len(n.data) for n in self.nodes.values()) // 4096
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = 1 << 20
        st.f_bfree = st.f_bavail = (1 << 20) - used
        st.f_files = 1 << 20
        st.f_ffree = st.f_favail = (1 << 20) - len(self.nodes)
        st.f_namemax = 255
        return st

    # -- data --------------------------------------------------------------------------------

    async def create(self, parent_inode, name, mode, flags, ctx):
        node = self._new(parent_inode, name, stat.S_IFREG | (mode & 0o7777))
        return pyfuse3.FileInfo(fh=node.inode, keep_cache=False), self._attrs(node)

    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if flags & os.O_TRUNC:
            node.data = bytearray()
        return pyfuse3.FileInfo(fh=inode, keep_cache=False)

    async def read(self, fh, off, size):
        return bytes(self._node(fh).data[off:off + size])

    async def write(self, fh, off, buf):
        node = self._node(fh)
        if off > len(node.data):
            node.data.extend(b"\0" * (off - len(node.data)))
        node.data[off:off + len(buf)] = buf
        node.mtime_ns = time.time_ns()
        return len(buf)

    async def fsync(self, fh, datasync):
        node = self.nodes.get(fh)
        if node is not None:
            self.synced_bytes += len(node.data)
            node.durable = bytes(node.data)

    async def flush(self, fh):
        return

    async def release(self, fh):
        return


async def _serve(fs: PowerFS) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM) as signals:
            print("mounted", flush=True)
            async for signum in signals:
                if signum == signal.SIGTERM:
                    pyfuse3.terminate()
                    return
                fs.cut()
                print(f"cut {fs.cuts} lost {fs.lost_bytes}", flush=True)


def main() -> None:
    mountpoint = sys.argv[1]
    fs = PowerFS()
    options = set(pyfuse3.default_options) | {"fsname=powerfs"}
    options.discard("default_permissions")
    pyfuse3.init(fs, mountpoint, options)
    try:
        trio.run(_serve, fs)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
