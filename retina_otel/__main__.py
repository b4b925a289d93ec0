from retina_otel.cli import main

raise SystemExit(main())
