import sys

from eval_jobs.sweep.run import main

sys.exit(main())
