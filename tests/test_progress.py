"""Progress bars in a log (a stream that is not a terminal) are plain lines, not carriage-return redraws."""

import io

from tqdm import tqdm

from miras.progress import progress_bar


def test_a_log_gets_one_line_per_redraw_and_no_carriage_returns():
    log = io.StringIO()  # isatty() is False, as for a file, a pipe or nohup.out
    with progress_bar(total=4, desc="work", file=log, mininterval=0) as bar:
        for i in range(4):
            bar.update(1)
            if i == 1:
                tqdm.write("a message", file=log)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("work:   0%") and lines[-1].startswith("work: 100%")
    assert "a message" in lines and all(line.strip() for line in lines)


def test_a_log_is_written_at_most_every_few_seconds_by_default():
    log = io.StringIO()
    with progress_bar(total=1000, file=log) as bar:
        for _ in range(1000):
            bar.update(1)
    assert len(log.getvalue().splitlines()) == 2  # the first line and the last, nothing in between
