"""Progress of long work (index builds): a bar on a terminal, elsewhere (a log file, a service) a log line a minute."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

PROGRESS_LOGGER = "qa.progress"

logger = logging.getLogger(PROGRESS_LOGGER)

LOG_EVERY_SECONDS = 60


class _LogLines:
    """A file for tqdm that logs each state it writes."""

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            logger.info(line)

    def flush(self) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str) -> tqdm:
    """A progress bar over `total` `unit`s when stderr is a terminal; otherwise the same figures as a log line at most
    every LOG_EVERY_SECONDS, so that a build run as a service or into a file still shows how far it has gone."""
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit)
    # miniters=1: tqdm's own adaptive step count would let its monitor thread log every 10 s
    return tqdm(total=total, desc=desc, unit=unit, file=_LogLines(), mininterval=LOG_EVERY_SECONDS, miniters=1, ascii=True)
