import sys

from addons.admin.server import main

sys.exit(main())
