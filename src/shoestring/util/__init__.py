"""Small helpers several packages share (memory probes, schedules); one definition each."""
