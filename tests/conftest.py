import os, sys; os.environ.setdefault("HF_HUB_OFFLINE","1"); sys.path.insert(0, os.path.dirname(__file__))
