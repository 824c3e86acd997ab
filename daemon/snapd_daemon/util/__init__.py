"""Small helpers with no knowledge of snapd: durable files, pollers, /proc/meminfo.

Owns nothing; imports nothing of snapd_daemon.
"""
