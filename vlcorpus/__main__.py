import sys

from vlcorpus.cli import main

sys.exit(main())
