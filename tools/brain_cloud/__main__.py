import sys

from brain_cloud.cli import main

sys.exit(main())
