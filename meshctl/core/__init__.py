"""The pure core: functions over plain data, no I/O (no files, sockets or clock reads)."""
