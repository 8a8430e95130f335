"""placeholder"""
def write_study_report(suite_name, results_dir):
    raise NotImplementedError
