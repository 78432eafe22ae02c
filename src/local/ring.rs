//! A `TPACKET_V3` receive ring on an `AF_PACKET` socket.
//!
//! The kernel copies each frame into memory it shares with us, in its receive softirq, and
//! hands over whole blocks of frames: a reader that wakes once per block pays no syscall,
//! no copy and no wakeup per packet. The price is latency: a block is handed over when it
//! is full or `retire_ms` after its first frame, so this suits a consumer that goes by the
//! kernel's receive timestamp (which every frame carries), not one that must forward each
//! packet at once. The benchmark's fw-b reads through it (`perf-load`): there it stands for
//! a firewall's kernel, which takes packets in softirq and never drops them for want of a
//! thread's CPU.

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use socket2::Socket;

/// A memory-mapped `TPACKET_V3` ring of `blocks` × `block_size` bytes on a bound
/// `AF_PACKET` datagram socket (frames start at the network header).
pub struct RxRing {
    sock: Socket,
    map: NonNull<u8>,
    block_size: usize,
    blocks: usize,
    /// The block the kernel fills next (blocks are handed over in order).
    next: usize,
}

// SAFETY: the mapping belongs to the ring alone; the kernel's side of the handshake is the
// per-block status word, read and written with acquire/release ordering.
unsafe impl Send for RxRing {}

impl RxRing {
    /// Map a ring on `sock`. `block_size` must be a multiple of the page size and hold the
    /// largest frame; blocks are handed over when full or `retire_ms` after their first frame.
    pub fn attach(
        sock: Socket,
        block_size: usize,
        blocks: usize,
        retire_ms: u32,
    ) -> io::Result<RxRing> {
        let fd = sock.as_raw_fd();
        super::mmsg::set_int_option(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            libc::tpacket_versions::TPACKET_V3 as libc::c_int,
        )?;
        // Frames are 16-byte aligned inside a block; frame_size only has to divide it.
        let frame_size = 2048;
        let req = libc::tpacket_req3 {
            tp_block_size: block_size as libc::c_uint,
            tp_block_nr: blocks as libc::c_uint,
            tp_frame_size: frame_size,
            tp_frame_nr: (block_size / frame_size as usize * blocks) as libc::c_uint,
            tp_retire_blk_tov: retire_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        super::mmsg::set_option(fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let len = block_size * blocks;
        // SAFETY: mapping the ring the kernel just allocated for this socket, whole.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED,
                fd,
                0,
            )
        };
        let p = if p == libc::MAP_FAILED {
            // MAP_LOCKED needs RLIMIT_MEMLOCK room; the ring works unlocked too.
            // SAFETY: as above.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            }
        } else {
            p
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(RxRing {
            sock,
            map: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            block_size,
            blocks,
            next: 0,
        })
    }

    /// Wait at most `timeout` for a block to be handed over.
    pub fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    /// Hand every frame of the blocks ready now to `f` (kernel receive time, the frame from
    /// its network header), in order, and give the blocks back. Returns the frames read.
    pub fn drain(&mut self, mut f: impl FnMut(SystemTime, &[u8])) -> usize {
        let mut frames = 0;
        for _ in 0..self.blocks {
            // SAFETY: `next < blocks`: the block lies inside the mapping.
            let block = unsafe { self.map.as_ptr().add(self.next * self.block_size) };
            // SAFETY: a block starts with its descriptor (version, offset_to_priv, then the
            // v1 header whose first word is the status), 8-byte aligned in a page-aligned
            // mapping; the kernel writes the status last when it hands the block over.
            let status = unsafe { &*block.add(8).cast::<AtomicU32>() };
            if status.load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                break;
            }
            // SAFETY: the kernel handed the block over: its header and frames are ours to
            // read until the status goes back.
            let hdr = unsafe { &*block.add(8).cast::<libc::tpacket_hdr_v1>() };
            let mut off = hdr.offset_to_first_pkt as usize;
            for _ in 0..hdr.num_pkts {
                if off + std::mem::size_of::<libc::tpacket3_hdr>() > self.block_size {
                    break;
                }
                // SAFETY: inside the block (checked above), 16-byte aligned by the kernel.
                let fh = unsafe { &*block.add(off).cast::<libc::tpacket3_hdr>() };
                let start = off + fh.tp_net as usize;
                let end = start + fh.tp_snaplen as usize;
                if end <= self.block_size {
                    // SAFETY: inside the block (checked).
                    let data = unsafe { std::slice::from_raw_parts(block.add(start), end - start) };
                    let at = SystemTime::UNIX_EPOCH
                        + Duration::new(u64::from(fh.tp_sec), fh.tp_nsec.min(999_999_999));
                    f(at, data);
                    frames += 1;
                }
                if fh.tp_next_offset == 0 {
                    break;
                }
                off += fh.tp_next_offset as usize;
            }
            status.store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.next = (self.next + 1) % self.blocks;
        }
        frames
    }

    /// Frames the kernel dropped since the last call (the ring was full), from
    /// `PACKET_STATISTICS`, which resets on read.
    pub fn take_drops(&self) -> io::Result<u32> {
        // struct tpacket_stats_v3: packets, drops, freeze_q_cnt.
        let mut st = [0u32; 3];
        let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `st` and updates `len`.
        let r = unsafe {
            libc::getsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                st.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st[1])
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `attach` mapped; nothing borrows it past `drain`.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.block_size * self.blocks) };
    }
}
