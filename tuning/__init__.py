from tuning._moved import install as _install_old_module_paths

_install_old_module_paths()  # experiments pickled before the split into packages still --resume
