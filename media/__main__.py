from media.cli.main import main

raise SystemExit(main())
