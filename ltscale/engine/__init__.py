"""The shared training machinery: loop, backend adapters, schedules, checkpoints, monitors."""
