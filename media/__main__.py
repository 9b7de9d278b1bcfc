from media.app import main

raise SystemExit(main())
