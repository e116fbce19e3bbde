from livesight.app.cli import main

raise SystemExit(main())
