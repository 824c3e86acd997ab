from snapd_daemon.server.cli import main

main()
