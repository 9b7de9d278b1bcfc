from media.cli import main

raise SystemExit(main())
