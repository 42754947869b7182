"""Progress of a write, from esptool's per-file progress bars."""

from __future__ import annotations

from fbuild_watch.deploy.progress import WriteProgress, WriteTracker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_files_add_up_in_flash_bytes_and_the_end_is_always_said() -> None:
    said: list[WriteProgress] = []
    clock = Clock()
    # two runs: 8 KiB and 64 KiB of flash; esptool counts compressed bytes
    track = WriteTracker([8192, 65536], said.append, clock=clock)
    track(100, 100)  # the first file in one block
    clock.now += 0.2
    track(1000, 4000)  # a quarter of the second
    clock.now += 0.01
    track(2000, 4000)  # too soon: not said
    track(4000, 4000)  # the end: said however soon
    assert [p.bytes_done for p in said] == [8192, 8192 + 16384, 8192 + 65536]
    assert said[-1] == WriteProgress(73728, 73728, 18, 18)


def test_at_most_ten_a_second() -> None:
    said: list[WriteProgress] = []
    clock = Clock()
    track = WriteTracker([1 << 20], said.append, clock=clock)
    for i in range(1, 257):  # 256 blocks in 1 s
        clock.now = i / 256
        track(i * 4096, 1 << 20)
    assert 10 <= len(said) <= 12 and said[-1].bytes_done == 1 << 20


def test_two_files_with_the_same_compressed_size() -> None:
    said: list[WriteProgress] = []
    clock = Clock()
    track = WriteTracker([4096, 4096], said.append, clock=clock)
    track(50, 100)
    clock.now = 1
    track(100, 100)
    clock.now = 2
    track(50, 100)  # the second file: counted on top of the first
    assert [p.bytes_done for p in said] == [2048, 4096, 6144]


def test_build_progress_from_ninja_and_a_tick_for_silent_builds() -> None:
    from fbuild_watch.build.progress import BuildProgressTracker, ninja_progress

    assert ninja_progress("[12/345] Building C object a.o") == (12, 345)
    assert ninja_progress("[1/2]no space") is None and ninja_progress("cc -c a.c") is None
    said: list[tuple[int | None, int | None, float]] = []
    clock = Clock()
    track = BuildProgressTracker(lambda d, t, e: said.append((d, t, e)), clock=clock)
    clock.now = 1.0
    track.tick()  # make: no count, only the time
    track.line("gcc -c main.c")
    clock.now = 2.0
    track.line("[3/9] Building C object a.o")
    track.line("[4/9] Building C object b.o")  # too soon
    track.line("[9/9] Linking app.elf")  # the last: always
    assert said == [(None, None, 1.0), (3, 9, 2.0), (9, 9, 2.0)]
