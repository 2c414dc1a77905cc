from ackwire.cli.main import main

raise SystemExit(main())
