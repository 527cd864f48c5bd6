import sys

from cgpt.launch.cli import main

sys.exit(main())
