from yolov9_qat.cli import main

raise SystemExit(main())
