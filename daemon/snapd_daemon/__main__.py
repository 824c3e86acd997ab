from snapd_daemon.server.entry import main

main()
