from snapd_client.cli import main

main()
