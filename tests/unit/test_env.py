import pytest

from collie.launch_env import first_slurm_host, read_launch_env


def test_slurm_variables_become_torchrun_variables():
    env = read_launch_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                           "SLURM_JOB_NODELIST": "gpu[003-004,010]", "SLURM_JOB_ID": "1234"})
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("5", "8", "1")
    assert env["MASTER_ADDR"] == "gpu003" and env["MASTER_PORT"] == "29734"


def test_torchrun_variables_win_over_slurm():
    env = read_launch_env({"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "3", "SLURM_NTASKS": "4"})
    assert env["RANK"] == "0" and env["WORLD_SIZE"] == "2"


@pytest.mark.parametrize("nodelist, host", [("node1", "node1"), ("a[7-9],b2", "a7"), ("x-1,x-2", "x-1"),
                                            ("c[01,05]", "c01")])
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host
