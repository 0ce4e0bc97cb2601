import asyncio
import os
import subprocess


async def bad(name: str) -> None:
    # ruleid: sluice-subprocess-shell
    subprocess.run(f"echo {name}", shell=True, check=True)
    # ruleid: sluice-subprocess-shell
    subprocess.Popen("ls " + name, shell=True)
    # ruleid: sluice-subprocess-shell
    await asyncio.create_subprocess_shell(f"echo {name}")
    # ruleid: sluice-subprocess-shell
    os.system("echo " + name)


async def good(name: str) -> None:
    # ok: sluice-subprocess-shell
    subprocess.run(["echo", name], check=True)
    # ok: sluice-subprocess-shell
    subprocess.run(["echo", name], shell=False, check=True)
    # ok: sluice-subprocess-shell
    await asyncio.create_subprocess_exec("echo", name)
