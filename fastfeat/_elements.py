"""Chemical symbols <-> atomic numbers (no ASE import needed)."""

__all__ = ["atomic_number", "SYMBOLS"]

SYMBOLS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu "
    "Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg "
    "Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
_NUMBERS = {s: z for z, s in enumerate(SYMBOLS) if z > 0}


def atomic_number(symbol, argname="symbol"):
    """Atomic number of a chemical symbol; ValueError naming `argname` if unknown."""
    try:
        return _NUMBERS[symbol]
    except (KeyError, TypeError):
        raise ValueError(f"`{argname}` contains {symbol!r}, which is not a chemical symbol") from None
