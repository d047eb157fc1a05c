from twinkles_hpc.cli import main

raise SystemExit(main())
