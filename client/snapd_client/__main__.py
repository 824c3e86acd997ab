from snapd_client.version import answer_version

if not answer_version():
    from snapd_client.cli import main

    main()
