/*
 * slowsync: an LD_PRELOAD shim that makes every flush of a process as slow as an SD card's.
 *
 * A flush to a cheap SD card takes 5-50 ms; the disks of a development machine or a CI runner
 * answer in microseconds, so code that waits on a flush where it must not (on an event loop)
 * looks fine there. This shim wraps the calls that wait for the medium, lets the real call run,
 * then sleeps SLOWSYNC_MS milliseconds (a decimal, default 0) before returning, and counts every
 * call, so that a test can read from outside how many flushes the process made.
 *
 * Wrapped: fsync, fdatasync, syncfs, sync, msync (delayed only with MS_SYNC) and
 * sync_file_range (delayed only with SYNC_FILE_RANGE_WAIT_AFTER, the flag that waits for the
 * write-out; RocksDB's bytes_per_sync starts a write-out without it and does not wait).
 *
 * The counters live in the file named by SLOWSYNC_COUNT_FILE (optional), mapped shared, so that
 * every thread and every process with the shim adds to the same page and a reader sees the
 * current values with a plain read(2): little-endian uint64 slots, see the SLOT_ names below.
 * Slot 0 counts the flushes that were delayed; the others count calls per function.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum {
    SLOT_FLUSHES, /* calls that waited for the medium, and were delayed */
    SLOT_FSYNC,
    SLOT_FDATASYNC,
    SLOT_SYNC_FILE_RANGE,
    SLOT_SYNCFS,
    SLOT_SYNC,
    SLOT_MSYNC,
    SLOT_DELAY_NS, /* total nanoseconds of added delay */
    SLOTS
};

#define PAGE_BYTES 4096

static pthread_once_t once = PTHREAD_ONCE_INIT;
static volatile uint64_t *counters; /* the shared page, or a private array without a file */
static uint64_t private_counters[SLOTS];
static struct timespec delay;
static uint64_t delay_ns;

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_syncfs)(int);
static void (*real_sync)(void);
static int (*real_msync)(void *, size_t, int);
static int (*real_sync_file_range)(int, off_t, off_t, unsigned int);

static void setup(void)
{
    int saved = errno;
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_syncfs = dlsym(RTLD_NEXT, "syncfs");
    real_sync = dlsym(RTLD_NEXT, "sync");
    real_msync = dlsym(RTLD_NEXT, "msync");
    real_sync_file_range = dlsym(RTLD_NEXT, "sync_file_range");

    const char *ms = getenv("SLOWSYNC_MS");
    double millis = ms ? strtod(ms, NULL) : 0.0;
    if (millis < 0)
        millis = 0;
    delay_ns = (uint64_t)(millis * 1e6);
    delay.tv_sec = (time_t)(delay_ns / 1000000000ULL);
    delay.tv_nsec = (long)(delay_ns % 1000000000ULL);

    counters = private_counters;
    const char *path = getenv("SLOWSYNC_COUNT_FILE");
    if (path && *path) {
        /* O_CREAT without O_TRUNC: a second process with the shim adds to the same counts */
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            struct stat st;
            if (fstat(fd, &st) == 0 && st.st_size < PAGE_BYTES)
                (void)ftruncate(fd, PAGE_BYTES);
            void *page = mmap(NULL, PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (page != MAP_FAILED)
                counters = page;
            close(fd);
        }
    }
    errno = saved;
}

static void count(int slot)
{
    pthread_once(&once, setup);
    __atomic_add_fetch(&counters[slot], 1, __ATOMIC_RELAXED);
}

/* The added wait of one flush; errno is kept, since callers read it after a failure. */
static void slow_down(void)
{
    int saved = errno;
    __atomic_add_fetch(&counters[SLOT_FLUSHES], 1, __ATOMIC_RELAXED);
    if (delay_ns) {
        struct timespec left = delay;
        while (nanosleep(&left, &left) != 0 && errno == EINTR)
            ;
        __atomic_add_fetch(&counters[SLOT_DELAY_NS], delay_ns, __ATOMIC_RELAXED);
    }
    errno = saved;
}

int fsync(int fd)
{
    count(SLOT_FSYNC);
    int rc = real_fsync(fd);
    slow_down();
    return rc;
}

int fdatasync(int fd)
{
    count(SLOT_FDATASYNC);
    int rc = real_fdatasync(fd);
    slow_down();
    return rc;
}

int syncfs(int fd)
{
    count(SLOT_SYNCFS);
    int rc = real_syncfs(fd);
    slow_down();
    return rc;
}

void sync(void)
{
    count(SLOT_SYNC);
    real_sync();
    slow_down();
}

int msync(void *addr, size_t length, int flags)
{
    count(SLOT_MSYNC);
    int rc = real_msync(addr, length, flags);
    if (flags & MS_SYNC)
        slow_down();
    return rc;
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags)
{
    count(SLOT_SYNC_FILE_RANGE);
    int rc = real_sync_file_range(fd, offset, nbytes, flags);
    if (flags & SYNC_FILE_RANGE_WAIT_AFTER)
        slow_down();
    return rc;
}
