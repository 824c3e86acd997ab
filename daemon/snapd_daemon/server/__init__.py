"""The daemon process: start-up order and drain (serve), options and the config
file (config), TCP with mutual TLS (tcp), systemd notification (sdnotify), and
the `snapd` entry point with `serve` (cli). The top: nothing imports it.
"""
